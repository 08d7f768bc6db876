"""`make gpu-check` (`python -m ray_jobs.measure.gpu_check`): throughput, memory and model FLOP utilisation of the paper
architectures on one GPU. `measure` holds timing, FLOP counting, the time budget and device facts; `phases` the
work measured (training steps and their variants, DP-SGD, release, patch attack, data loading); `report` the
table. Imports nothing from Ray or MLflow: the GPU machine may have neither."""
