"""Data: one reader per public annotation format (:mod:`.formats`), sample building (:mod:`.samples`,
drafts from the task table), batching (:mod:`.collate`), the training mixture (:mod:`.sources`,
:mod:`.mixture`) and the synthetic world of ``xsam synth`` (:mod:`.synthetic`)."""
