"""Publishers: the run directory to S3, the adapter to the Hugging Face Hub."""
