"""Model-parallel utilities: process groups, tensor-parallel layers, mappings, RNG, grads;
the pure layout and sharding arithmetic (layout.py, sharding_map.py) needs no processes."""
from .cross_entropy import vocab_parallel_cross_entropy
from .data import broadcast_data
from .grads import (allreduce_sequence_parallel_gradients, clip_grad_norm, counts_toward_norm, get_grad_norm,
                    param_grad, total_norm)
from .init_methods import (init_method_normal, initialize_affine_weight, mark_vocab_parallel,
                           param_is_tensor_parallel, scaled_init_method_normal, set_tensor_model_parallel_attributes,
                           xavier_normal)
from .layout import (ParallelLayout, PipelineStage, merge_shards, pad_vocab_size, shard_tensor,
                     stage_layer_range)
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .mappings import (copy_to_tensor_model_parallel_region, gather_from_sequence_parallel_region,
                       gather_from_tensor_model_parallel_region, reduce_from_tensor_model_parallel_region,
                       reduce_scatter_to_sequence_parallel_region, scatter_to_sequence_parallel_region,
                       scatter_to_tensor_model_parallel_region)
from .parallel_state import (destroy_model_parallel, get_data_parallel_group,
                             get_data_parallel_rank, get_data_parallel_src_rank, get_data_parallel_world_size,
                             get_embedding_group, get_model_parallel_group, get_pipeline_model_parallel_first_rank,
                             get_pipeline_model_parallel_group, get_pipeline_model_parallel_last_rank,
                             get_pipeline_model_parallel_next_rank, get_pipeline_model_parallel_prev_rank,
                             get_pipeline_model_parallel_rank, get_pipeline_model_parallel_split_rank,
                             get_pipeline_model_parallel_world_size, get_pipeline_stage, get_position_embedding_group,
                             get_tensor_model_parallel_group, get_tensor_model_parallel_rank,
                             get_tensor_model_parallel_src_rank, get_tensor_model_parallel_world_size,
                             get_virtual_pipeline_model_parallel_rank,
                             get_virtual_pipeline_model_parallel_world_size, initialize_model_parallel,
                             is_pipeline_first_stage, is_pipeline_last_stage, is_pipeline_stage_after_split,
                             is_pipeline_stage_before_split, is_rank_in_embedding_group,
                             is_rank_in_position_embedding_group, model_parallel_is_initialized,
                             set_virtual_pipeline_model_parallel_rank)
from .random import (MODEL_PARALLEL_RNG_TRACKER_NAME, RNGStatesTracker, checkpoint, get_all_rng_states,
                     get_cuda_rng_tracker, get_rng_tracker, model_parallel_cuda_manual_seed,
                     model_parallel_manual_seed, set_all_rng_states)
from .sharding_map import (ShardingMap, ShardSpec, mark_stage_copy, merge_pipeline_stages, merge_tensor_parallel,
                           sharding_map_of, split_tensor_parallel)
from .utils import divide, split_tensor_along_last_dim, vocab_range_for_rank
