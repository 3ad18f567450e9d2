"""Sponsored products: campaigns (store), targeting, the auction, pacing and reports, one module each."""
