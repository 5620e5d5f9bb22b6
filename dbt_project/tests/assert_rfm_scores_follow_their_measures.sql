-- RFM scores follow their measures: customers with equal measures have equal scores, and a better
-- measure never has a lower score (fewer recency days, more orders, more revenue). Each measure's
-- distinct values are read in order from worst to best; a row here is a value that breaks the rule.
with

segments as (
    select * from {{ ref('dm_customer_segments') }}
),

by_measure as (
    select
        'recency' as score,
        -1 * recency_days as measure,
        min(recency_score) as lowest_score,
        max(recency_score) as highest_score
    from segments
    group by recency_days
    union all
    select
        'frequency' as score,
        total_orders as measure,
        min(frequency_score) as lowest_score,
        max(frequency_score) as highest_score
    from segments
    group by total_orders
    union all
    select
        'monetary' as score,
        revenue as measure,
        min(monetary_score) as lowest_score,
        max(monetary_score) as highest_score
    from segments
    group by revenue
),

ordered as (
    select
        *,
        -- no order date at all (a line without its order header) is the least recent
        lag(highest_score) over (partition by score order by measure nulls first) as worse_measure_score
    from by_measure
),

final as (
    select * from ordered
    where lowest_score <> highest_score or lowest_score < worse_measure_score
)

select * from final
