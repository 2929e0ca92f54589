"""Every test process sees 8 CPU devices, so sharded code runs as on an 8-chip host."""
import jax

jax.config.update('jax_num_cpu_devices', 8)
