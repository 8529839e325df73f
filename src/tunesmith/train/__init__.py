"""Training-loop helpers shared by the recipes: data order, optimizer and schedule, steps,
checkpoints, metrics."""
