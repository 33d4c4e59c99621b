"""hmrcritic: diffusion human mesh recovery, a critique agent that scores hypothesis groups, and group
preference alignment that uses those scores instead of 3D labels."""

__version__ = "0.1.0"
