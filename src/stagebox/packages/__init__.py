"""Data packages: a declaration of an action's files, ``pack`` into a zip, ``push`` it.

- :mod:`.declaration` reads the YAML declaration (line-numbered errors, ``$VAR``).
- :mod:`.pack` builds the deterministic package (flat zip or BagIt bag zip).
- :mod:`.record` reads a package back and keeps ``NAME.push.json``.
- :mod:`.push` sends it over SFTP; :mod:`.to_server` through a stagebox server.
"""
