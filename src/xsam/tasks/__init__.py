"""Task-level code outside the network: prompt formatting, targets and post-processing."""
