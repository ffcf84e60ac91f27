"""Setup of the JAX test process (before its CPU backend starts).

Mosaic GPU interpret mode runs a kernel's warpgroups as concurrent XLA computations, and XLA's CPU
client runs max(cores, CPU devices) computations at once: the two-block shrink's three warpgroups
would wait for each other forever on a two-core machine (the CI's). Four CPU devices give its client
four threads. (test_parallel_jax runs its own child process with its own device count.)
"""

import jax

jax.config.update("jax_num_cpu_devices", 4)
