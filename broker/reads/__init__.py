"""The broker's read side: what a caller may list and see, as the API's JSON shapes.

Visibility is decided here (through ``broker.access``) for the API routes and the web
pages alike. Every function reads in the caller's transaction (``Broker.read()``) and
changes nothing; changes go through the service modules.
"""
