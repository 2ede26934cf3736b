"""Training the models that get merged: continual pretraining (cpt) and instruction tuning
(sft) on trl and transformers."""
