"""The generic training loop: train state, mesh, checkpoints, losses, writer.

Import the submodules (`from factorecg_jax.training import train`); this
package file imports nothing so that `losses` (model-specific) and the loop
(model-agnostic) load independently.
"""
