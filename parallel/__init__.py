"""lactron.parallel"""
