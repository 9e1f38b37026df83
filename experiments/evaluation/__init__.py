"""Evaluation: one simulated run from a plain config (:mod:`.runner`), policies side by
side on one workload or over a scenario's evaluation seeds and the paper's ablation
(:mod:`.compare`, :mod:`.evaluate`), scenarios (:mod:`.scenario`), confidence intervals and
the promotion rule (:mod:`.stats`), terminal tables (:mod:`.table`), a policy's agreement
with the service's decision log (:mod:`.agreement`), and the one fan-out of independent
runs over local processes or Ray that every other many-run command uses (:mod:`.fanout`)."""
