"""The X-SAM network, one module per component; :class:`XSamModel` composes them."""
