"""Reliability harness (issue 9): a throwaway stack, ingest as a process, sequence-numbered sources
whose broker acknowledgements are the ground truth, faults injected in turn, and the checks that count
what was lost or duplicated. Used by ``wulian chaos``, ``wulian soak``, ``wulian fuzz`` and the tests."""
