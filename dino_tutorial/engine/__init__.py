"""What makes DINO run fast and safely, kept apart from the modules that teach it.

Nothing here changes what is computed; each module answers one engineering question of the trainer:

* ``precision``: which autocast dtype a device gets, deterministic kernels, resuming across precisions;
* ``lookahead``: views made on the device, the next batch's launched while the current step still runs;
* ``control``: stop signals and empty batches agreed by every process, without waiting for the GPU;
* ``distributed``: joining the process group, sharded feature banks and the k-NN over them.
"""
