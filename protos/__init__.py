"""Protocol buffer sources for the ConsentLedger service and the Python code grpcio-tools generates from them."""
