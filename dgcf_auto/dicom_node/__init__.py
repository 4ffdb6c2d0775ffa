"""dgcf_dicom_node: a worker beside an Orthanc DICOM server that turns arriving MR/CBCT series into sCT series
(orthanc.py: the REST calls; state.py: the SQLite state; selection.py: what is taken or refused; worker.py:
the loop; status.py: --status and the throughput). documentation/dicom_node.md sets it up for a clinic."""
