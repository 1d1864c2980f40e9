"""The ABI between Xen and its guests, like xen/include/public.

Domains and devices import this package and nothing else of the hypervisor.
Binary layouts are named struct formats whose sizes a test checks against the
reference (STYLE.md 7).
"""
