"""What every part shares: the run configuration, the profiles, where files go and how they are written."""
