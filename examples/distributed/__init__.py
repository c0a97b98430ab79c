"""Distributed (torchrun + DDP) examples: QCFS training of a prepared ANN, fine-tuning of a converted SNN."""
