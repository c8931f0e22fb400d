"""Neuron attribution methods: the primary methods applied to one neuron of a hidden layer."""
