"""lactron.model.fast_weights"""
