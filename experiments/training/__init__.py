"""Training: a learned scheduler policy trained with (Maskable)PPO on a scenario
(:mod:`.train`), warm-started by imitating a heuristic (:mod:`.imitate`), several seeds in
parallel (:mod:`.seeds`), and the promotion of a challenger to ``champion`` when it beats
the heuristics (:mod:`.promote`)."""
