"""Training: the pure core (core, rewrites, rng), the run's plan and state
(plan, state, optim, identity, warmstart), the chunk programs (programs), the loop
(trainer, runstate, schedule, control, components, stop) and resuming (resume, manifest).
Imports nothing of model, proof or cli.
"""
