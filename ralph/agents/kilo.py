"""The ``kilo`` preset: Kilo Code's CLI (``kilo``, an opencode fork) driven as opencode is.

``kilo`` 7.7.7 keeps opencode's commands, JSON events and session store: ``kilo import`` of the
same minimal session file creates Kilo's session with our ID and title, ``kilo run --format=json
--session=ID`` continues it, ``step_finish`` events carry tokens and cost. So this is the opencode
preset under another name (agents/opencode.py: binding, fallback to ``--title``, parsing, ending
what the bash tool left running). Kilo reads ``$XDG_CONFIG_HOME/kilo/kilo.json`` and ``KILO_*``
variables instead of opencode's.
"""

from __future__ import annotations

from ralph.agents.opencode import OpencodePreset


class KiloPreset(OpencodePreset):
    name = "kilo"
    default_binary = "kilo"
    import_file = "kilo-session.json"


PRESET = KiloPreset()
