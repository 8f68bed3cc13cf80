"""The X-SAM network, one module per component; :class:`~.xsam.XSamModel` composes them. Its outputs
(:mod:`.outputs`), greedy generation (:mod:`.generation`) and pretrained I/O (:mod:`.pretrained`,
on :mod:`.serialization`) live beside it."""
