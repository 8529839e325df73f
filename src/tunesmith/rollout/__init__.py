"""Rollouts shared by PPO and GRPO: generation, reward functions, advantages."""
