"""Checkpoint I/O at the edges: find a model, index its tensors, read them in slices, and
write sharded safetensors without holding a whole model (or a whole shard) in memory.

* :mod:`mergemed.io.formats`: one reader per weights file format, behind
  :class:`~mergemed.io.formats.TensorSource` (safetensors, and pickle when allowed).
* :mod:`mergemed.io.checkpoint`: a model folder (config, tokenizer files, its sources).
* :mod:`mergemed.io.writer`: the output layout and the sinks merged slices are written to.
* :mod:`mergemed.io.hub`: model references, Hugging Face Hub folders and header-only reads.
* :mod:`mergemed.io.architecture`: what config keys and tensor names mean, per model family.
"""
