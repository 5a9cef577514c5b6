#!/bin/bash
#SBATCH --job-name=dino-rn50
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per machine; it starts one process per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # 8 data-loading workers for each of the 8 processes
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out

HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node 8 \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    -m dino_tutorial.train --preset rn50_imagenet \
    --data-path /data/imagenet --output-dir /shared/runs/rn50_imagenet --knn-every 10
