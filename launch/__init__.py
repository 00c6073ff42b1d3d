"""lactron.launch"""
