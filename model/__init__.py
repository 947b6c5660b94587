"""The Mono-InternVL network: modules named as the checkpoint, its loader, and its kernels."""
