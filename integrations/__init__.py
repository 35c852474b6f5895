"""Optional bridges from this repository's models to other frameworks (each with its own requirements file).

Nothing in the scripts or in the library packages imports them: `integrations.anomalib_adapter` needs
`requirements-anomalib.txt` installed, the rest of the repository does not.
"""
