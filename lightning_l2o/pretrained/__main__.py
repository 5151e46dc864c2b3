"""``python -m lightning_l2o.pretrained {list,export}``."""

from lightning_l2o.pretrained import main

main()
