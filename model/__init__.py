"""lactron.model"""
