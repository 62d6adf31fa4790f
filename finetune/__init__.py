"""Labeled runs on small subsets: budgets, heads, the sweep, and the curve report."""
