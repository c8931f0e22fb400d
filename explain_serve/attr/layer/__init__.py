"""Layer attribution methods: the primary methods applied to a hidden layer's output or input."""
