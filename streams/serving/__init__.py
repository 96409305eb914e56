"""Serving: the score RPC, its score process, request routing, the web API and status page."""
