"""lactron.data"""
