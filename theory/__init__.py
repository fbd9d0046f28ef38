"""Theory: simulate bounded-variance, bounded-drift discrepancy and check the tracking bound."""
