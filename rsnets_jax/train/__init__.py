"""Training: the loss, the optimiser, the jitted steps, the loop, evaluation and its reports, and
BatchNorm recalibration for resolutions added after training.

`losses` (the RS-Nets objective; the distillation modes, each with its loss parts), `optim`
(SGD and its schedule), `sharding` (mesh and placement), `step` (the train state; one train step
and one eval step, jitted), `loop` (the job: resume, steps, checkpoints, evaluations, reports),
`evaluate` and `reports` (accuracy, results.md and the figure), `recalibrate` (a resolution added
after training). Data flows one way: data -> step -> state -> checkpoint / evaluation. This room
imports `models`, `data` and `checkpoints`, never `deploy`.
"""
