"""Protocol messages pymesh speaks that no installed package provides."""
