"""The node datapath: tc programs in C, the bcc loader, map schemas and drop reasons."""
