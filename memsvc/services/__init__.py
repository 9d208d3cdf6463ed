"""Services: turns, sessions, memory, documents, admin and the OpenAI mapping.

Domain records in, domain records out; failures are :mod:`memsvc.errors` domain errors.
No HTTP types here: ``memsvc.api`` maps both to HTTP.
"""
