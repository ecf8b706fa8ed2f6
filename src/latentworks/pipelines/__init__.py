"""latentworks.pipelines."""
