"""Development tools: never used by the product in production.

- :mod:`app.devtools.happy_server`: a local, protocol-faithful Happy server (in memory);
- ``app/devtools/happy_cli/happy``: a stand-in for the Happy CLI that boxes run;
- :mod:`app.devtools.box_runtime`: that stand-in and PyNaCl made runnable by box users;
- :mod:`app.devtools.demo`: the offline demo ``make run`` starts in development (a local
  Happy server and one demo box on loopback, README "Offline demo").

The test suite uses the same tools as its doubles.
"""
