"""Tests of the web app (leukoscope.serve). A package, so its module names never clash with others'."""
