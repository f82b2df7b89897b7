#!/bin/bash
# JPEG sensitivity experiment (issue 6), PyTorch CPU, width 0.25, all 50k images, 24 epochs, batch 512.
cd /work/main
for arm in q75:/work/shared/cifar10 q55:/tmp/cifar10-q55; do
  name=${arm%%:*}; dir=${arm#*:}
  /tmp/torchvenv/bin/python bench/train_torch.py --data $dir --device cpu --width 0.25 --epochs 24 --batch-size 512 --seed 0 --lr-max 0.4 --lr-min 0.004 > /tmp/jpegexp/$name.log 2>&1
done
echo done > /tmp/jpegexp/finished
