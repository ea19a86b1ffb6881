from mnist_pipeline.cli import main

main()
