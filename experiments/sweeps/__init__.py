"""Sweeps: the shipped sweep files (``*.toml`` in this folder, data only), a sweep file's
validated form (:mod:`.sweep_file`), running every point of one and summarizing it
(:mod:`.sweep`), its figures (:mod:`.plots`) and HTML report (:mod:`.report`), and the
online capacity search: one probe at a fixed arrival rate (:mod:`.probe`) and the search
for the highest rate at which the SLO holds (:mod:`.capacity`)."""
