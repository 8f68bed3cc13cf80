"""Evaluation: the benchmark table and suites (:mod:`.benchmarks`), one evaluator per metric family
(:mod:`.evaluators`), the runner (:mod:`.evaluate`), file scoring for ``xsam score`` (:mod:`.score`),
and the metrics themselves (:mod:`.metrics`)."""
