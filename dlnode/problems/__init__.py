"""What is trained: the losses (regression, completion, sensing, factorisation), the networks, their initialisations."""
